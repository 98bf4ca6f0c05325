"""Converted weights -> a model's variables, through `params.load_matching`, with one-sentence mismatches.

Converted names are unit paths (`params/stage1/block0/conv1/kernel`); a model keeps each unit under
`extractor` or `head` depending on its split, so names are placed by dropping that part from the model's
own paths. Every model variable must come from the file and every file variable must have a place, with
two deliberate exceptions that the report names: a classifier for another number of classes is
re-initialised, and a ViT's position embeddings for another grid are resampled (bilinearly, as
big_vision's high-resolution fine-tuning does).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from modular import params as P

PARTS = ("extractor", "head")
CLASSIFIER = "params/head/classifier/.*"


class PretrainedMismatchError(P.SubtreeMismatchError):
    """The weights in a file do not fit the model they are loaded into."""


def unit_path(path: str) -> str:
    """'params/extractor/stem/conv/kernel' -> 'params/stem/conv/kernel' (the split-independent name)."""
    parts = path.split("/")
    return "/".join(parts[:1] + parts[2:]) if len(parts) > 2 and parts[1] in PARTS else path


def _shape(x) -> str:
    return "x".join(map(str, np.shape(x))) or "scalar"


def _resample_grid(position: np.ndarray, tokens: int) -> np.ndarray | None:
    """(1, n*n, w) position embeddings bilinearly resized to (1, tokens, w), or None if not square grids."""
    old, new = int(round(np.sqrt(position.shape[1]))), int(round(np.sqrt(tokens)))
    if old * old != position.shape[1] or new * new != tokens:
        return None
    grid = jnp.asarray(position[0].reshape(old, old, -1), jnp.float32)
    return np.asarray(jax.image.resize(grid, (new, new, grid.shape[-1]), "linear")).reshape(1, tokens, -1)


def _more(paths: list[str], what: str) -> str:
    return f" ({len(paths) - 1} more {what})" if len(paths) > 1 else ""


def load_converted(variables: Mapping, converted: Mapping[str, np.ndarray], *, source: str,
                   model: str = "the model") -> tuple[dict, dict]:
    """`variables` with every leaf taken from `converted` (unit-path names); returns (variables, report).

    The report is `params.matching_report`'s plus `reinitialised` (a classifier for another class count)
    and `resampled` (position embeddings for another token grid). Anything else that does not match
    raises PretrainedMismatchError naming `source`, `model` and the first differing variable.
    """
    flat = P.flatten(variables)
    place = {unit_path(p): p for p in flat}
    placed, unused = {}, []
    for name, value in converted.items():
        (placed.__setitem__(place[name], value) if name in place else unused.append(name))
    notes = {"reinitialised": [], "resampled": []}
    dont_load = []
    classifier = [p for p in placed if p.startswith("params/head/classifier/")]
    if any(np.shape(placed[p]) != np.shape(flat[p]) for p in classifier):
        dont_load.append(CLASSIFIER)
        notes["reinitialised"] = sorted(p for p in flat if p.startswith("params/head/classifier/"))
    for p in list(placed):
        if p.endswith("/position") and np.shape(placed[p]) != np.shape(flat[p]) and np.ndim(placed[p]) == 3 \
                and np.shape(placed[p])[2] == np.shape(flat[p])[2]:
            resized = _resample_grid(np.asarray(placed[p]), np.shape(flat[p])[1])
            if resized is not None:
                placed[p] = resized
                notes["resampled"].append(p)
    skipped = set(P.matching_report(flat, {}, dont_load)["skipped"])
    missing = sorted((p for p in flat if p not in placed and p not in skipped), key=lambda p: not p.startswith("params/"))
    wrong = [p for p in placed if p not in skipped and np.shape(placed[p]) != np.shape(flat[p])]
    if unused or missing or wrong:
        problems = []
        if wrong:
            problems.append(f"its '{wrong[0]}' is {_shape(placed[wrong[0]])} where the model has "
                            f"{_shape(flat[wrong[0]])}{_more(wrong, 'differ')}")
        if missing:
            problems.append(f"it lacks '{missing[0]}'{_more(missing, 'missing')}")
        if unused:
            problems.append(f"the model has no place for its '{unused[0]}'{_more(unused, 'without a place')}")
        raise PretrainedMismatchError(f"The weights in {source} do not fit {model} (another architecture, depth "
                                      f"or width?): {'; '.join(problems)}.")
    src = P.unflatten({p: np.asarray(v, dtype=jnp.result_type(flat[p])) for p, v in placed.items()})
    loaded = P.load_matching(variables, src, dont_load=dont_load, require_all=True)
    return loaded, {**P.matching_report(variables, src, dont_load), **notes}


def describe(report: Mapping, source: str) -> str:
    """One line per fact: how much was loaded from `source`, what was re-initialised or resampled."""
    lines = [f"init from {source}: loaded {len(report['loaded'])} variables"]
    if report.get("reinitialised"):
        lines.append(f"  re-initialised (another class count): {', '.join(report['reinitialised'])}")
    if report.get("resampled"):
        lines.append(f"  resampled to the model's token grid: {', '.join(report['resampled'])}")
    lines += [f"  note: {note}" for note in report.get("notes", ())]
    for key in ("kept", "unused"):
        if report.get(key):
            lines.append(f"  {key}: {', '.join(report[key])}")
    return "\n".join(lines)
