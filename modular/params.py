"""Parameter-tree algebra: name, label, split, merge and swap subtrees of a parameter pytree.

Every method in this library is "train some subtrees, freeze the rest, swap subtrees between models".
Paths are `/`-joined key strings (`extractor/stage1/block0/conv1/kernel`); rules are ordered
`(regex, value)` pairs matched with `re.fullmatch`, first match wins, with a catch-all default
(big_vision's convention for freezing and learning-rate multipliers).
"""
from __future__ import annotations

import difflib
import hashlib
import re
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import frozen_dict

PyTree = Any
Rules = Sequence[tuple[str, Any]]

SHAREABLE = "shareable"
PRIVATE = "private"


class SubtreeMismatchError(ValueError):
    """Raised when a subtree does not fit where it is being put (structure, shape or dtype)."""


def _unfreeze(tree: PyTree) -> PyTree:
    return frozen_dict.unfreeze(tree) if isinstance(tree, frozen_dict.FrozenDict) else tree


def flatten(tree: Mapping) -> dict[str, Any]:
    """Nested dict -> {'a/b/c': leaf}, in the tree's own key order."""
    return traverse_util.flatten_dict(_unfreeze(tree), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict:
    """{'a/b/c': leaf} -> nested dict."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def paths(tree: Mapping) -> list[str]:
    return list(flatten(tree))


def match_rules(path: str, rules: Rules, default: Any = None) -> Any:
    """Value of the first rule whose regex fully matches `path`, else `default`."""
    for pattern, value in rules:
        if re.fullmatch(pattern, path):
            return value
    return default


def check_rules(rules: Rules) -> None:
    """Fail early with one sentence on a rule that is not a valid regex."""
    for pattern, _ in rules:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"Parameter rule {pattern!r} is not a valid regular expression ({e}).") from None


def keypath_str(key_path) -> str:
    """A `jax.tree_util` key path as this module's `/`-joined path string."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path)


def check_rules_match(tree: Mapping, rules: Rules, *, what: str = "rule") -> None:
    """Every rule must fully match at least one path of `tree`: a rule that matches nothing (a typo, a
    leading '/', Flax-style paths) would otherwise silently leave its subtree to the default (often: frozen)."""
    check_rules(rules)
    all_paths = paths(tree)
    for pattern, _ in rules:
        if any(re.fullmatch(pattern, p) for p in all_paths):
            continue
        prefixes = sorted({"/".join(p.split("/")[:depth]) + "/.*" for p in all_paths for depth in (1, 2)
                           if len(p.split("/")) > depth})
        near = difflib.get_close_matches(pattern.lstrip("/"), prefixes, n=3, cutoff=0.0) or prefixes[:3]
        why = " (paths have no leading '/')" if pattern.startswith("/") else ""
        raise ValueError(f"The {what} {pattern!r} matches no parameter{why}; did you mean "
                         f"{' or '.join(repr(n) for n in near)}?")


def label_tree(tree: Mapping, rules: Rules, default: Any = None) -> dict:
    """A tree of the same structure whose leaves are the rule value matched by each leaf's path."""
    check_rules(rules)
    return unflatten({p: match_rules(p, rules, default) for p in flatten(tree)})


def mask(tree: Mapping, patterns: Iterable[str] | str) -> dict:
    """Boolean tree: True where the path fully matches any of `patterns`."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    return label_tree(tree, [(p, True) for p in patterns], default=False)


def split(tree: Mapping, rules: Rules, default: Any) -> dict[Any, dict]:
    """Partition a tree into {label: subtree}; each subtree keeps the full paths of its leaves."""
    check_rules(rules)
    out: dict[Any, dict] = {}
    for p, leaf in flatten(tree).items():
        out.setdefault(match_rules(p, rules, default), {})[p] = leaf
    return {label: unflatten(flat) for label, flat in out.items()}


def merge(*trees: Mapping, allow_overlap: bool = False) -> dict:
    """Inverse of `split`: the union of disjoint subtrees (later ones win if `allow_overlap`)."""
    flat: dict[str, Any] = {}
    for t in trees:
        for p, leaf in flatten(t).items():
            if p in flat and not allow_overlap:
                raise ValueError(f"Cannot merge: path '{p}' appears in more than one subtree.")
            flat[p] = leaf
    return unflatten(flat)


def get_subtree(tree: Mapping, prefix: str) -> Any:
    """The subtree under a `/`-joined prefix, e.g. get_subtree(params, 'head')."""
    node: Any = _unfreeze(tree)
    for key in filter(None, prefix.split("/")):
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError(f"No subtree at '{prefix}' (missing key '{key}').")
        node = node[key]
    return node


def _describe(leaf: Any) -> str:
    return f"{getattr(leaf, 'dtype', type(leaf).__name__)}{list(getattr(leaf, 'shape', ()))}"


def check_compatible(expected: Mapping, given: Mapping, where: str = "") -> None:
    """Raise SubtreeMismatchError naming the first path whose structure, shape or dtype differs."""
    exp, got = flatten(expected), flatten(given)
    prefix = f"{where}/" if where else ""
    missing = [p for p in exp if p not in got]
    extra = [p for p in got if p not in exp]
    if missing or extra:
        detail = f"missing '{prefix}{missing[0]}'" if missing else f"unexpected '{prefix}{extra[0]}'"
        raise SubtreeMismatchError(
            f"Subtree structure differs at {detail} ({len(missing)} missing, {len(extra)} unexpected paths).")
    for p, e in exp.items():
        g = got[p]
        if np.shape(e) != np.shape(g) or jnp.result_type(e) != jnp.result_type(g):
            raise SubtreeMismatchError(
                f"Subtree does not fit at '{prefix}{p}': expected {_describe(e)}, got {_describe(g)}.")


def replace_subtree(tree: Mapping, prefix: str, subtree: Mapping, *, check: bool = True) -> dict:
    """A copy of `tree` with the subtree at `prefix` replaced (checked for structure/shape/dtype)."""
    if not isinstance(subtree, Mapping) and isinstance(get_subtree(tree, prefix), Mapping):
        raise SubtreeMismatchError(f"The subtree for '{prefix}' must be a mapping of parameters, got "
                                   f"{type(subtree).__name__}.")
    if check:
        check_compatible(get_subtree(tree, prefix), subtree, where=prefix)
    keys = [k for k in prefix.split("/") if k]
    new = dict(_unfreeze(tree))
    node = new
    for k in keys[:-1]:
        node[k] = dict(node[k])
        node = node[k]
    node[keys[-1]] = subtree
    return new


def swap(receiver: Mapping, donor: Mapping, prefix: str) -> dict:
    """`receiver` with its `prefix` subtree taken from `donor` (e.g. head of B onto extractor of A).

    For parameter trees. A model's whole variables (parameters and BatchNorm statistics) swap together
    with `swap_variables`: swapping only the parameters leaves the extractor with the other's statistics."""
    return replace_subtree(receiver, prefix, get_subtree(donor, prefix))


def get_variables(variables: Mapping, prefix: str) -> dict:
    """{collection: subtree at `prefix`} over a model's variables ({'params': ..., 'batch_stats': ...}):
    everything the `prefix` module owns, parameters and statistics, e.g. to export an extractor whole."""
    parts = {name: get_subtree(tree, prefix) for name, tree in _unfreeze(variables).items()
             if isinstance(tree, Mapping) and _has_subtree(tree, prefix)}
    if not parts:
        raise KeyError(f"No collection of these variables ({', '.join(map(repr, variables))}) has a subtree at "
                       f"'{prefix}'.")
    return parts


def replace_variables(variables: Mapping, prefix: str, parts: Mapping) -> dict:
    """`variables` with the `prefix` subtree of every collection replaced from `parts` ({collection: subtree}).

    The collections must agree: a collection that has `prefix` in `variables` but not in `parts` (e.g.
    parameters without their BatchNorm statistics) is an error, so an extractor never runs on another's
    statistics by omission. Structure, shapes and dtypes are checked as in `replace_subtree`."""
    have = {name for name, tree in _unfreeze(variables).items()
            if isinstance(tree, Mapping) and _has_subtree(tree, prefix)}
    if set(parts) != have:
        raise SubtreeMismatchError(
            f"The subtree at '{prefix}' lives in collections {sorted(have)}, but {sorted(parts)} were given: "
            f"replace them together (get_variables(donor, '{prefix}') gives them all).")
    new = dict(_unfreeze(variables))
    for name, subtree in parts.items():
        new[name] = replace_subtree(new[name], prefix, subtree)
    return new


def swap_variables(receiver: Mapping, donor: Mapping, prefix: str) -> dict:
    """`receiver`'s variables with the `prefix` module (parameters and statistics) taken from `donor`."""
    return replace_variables(receiver, prefix, get_variables(donor, prefix))


def _has_subtree(tree: Mapping, prefix: str) -> bool:
    try:
        get_subtree(tree, prefix)
    except KeyError:
        return False
    return True


def load_matching(dst: Mapping, src: Mapping, dont_load: Iterable[str] | str = (), *,
                  require_all: bool = False) -> dict:
    """`dst` with every leaf whose path also exists in `src` taken from `src`, except paths matching a
    `dont_load` regex (they keep `dst`'s value, e.g. a freshly initialised head).

    The one way to start a model from another's weights (big_vision's `merge_params` in spirit): shapes
    and dtypes are checked per leaf (SubtreeMismatchError names the first that differs); with
    `require_all`, every `dst` path that is not in `dont_load` must come from `src`. `matching_report`
    says what was loaded, kept and left unused.
    """
    report = matching_report(dst, src, dont_load)
    if require_all and report["kept"]:
        raise SubtreeMismatchError(f"{len(report['kept'])} parameter(s) were not found in the source, e.g. "
                                   f"'{report['kept'][0]}' (add them to dont_load to keep their initial values).")
    flat_dst, flat_src = flatten(dst), flatten(src)
    for p in report["loaded"]:
        d, s = flat_dst[p], flat_src[p]
        if np.shape(d) != np.shape(s) or jnp.result_type(d) != jnp.result_type(s):
            raise SubtreeMismatchError(f"Cannot load '{p}': the model expects {_describe(d)}, the source has "
                                       f"{_describe(s)} (add it to dont_load to keep the model's own value).")
        flat_dst[p] = s
    return unflatten(flat_dst)


def matching_report(dst: Mapping, src: Mapping, dont_load: Iterable[str] | str = ()) -> dict[str, list[str]]:
    """{'loaded': paths taken from src, 'skipped': dst paths matching dont_load, 'kept': dst paths src lacks,
    'unused': src paths dst lacks} for `load_matching`."""
    patterns = [dont_load] if isinstance(dont_load, str) else list(dont_load)
    check_rules([(p, None) for p in patterns])
    flat_dst, flat_src = flatten(dst), flatten(src)
    skip = [p for p in flat_dst if match_rules(p, [(q, True) for q in patterns], False)]
    return dict(loaded=[p for p in flat_dst if p in flat_src and p not in skip], skipped=skip,
                kept=[p for p in flat_dst if p not in flat_src and p not in skip],
                unused=[p for p in flat_src if p not in flat_dst])


def count(tree: Mapping) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def nbytes(tree: Mapping) -> int:
    return int(sum(np.size(x) * jnp.dtype(jnp.result_type(x)).itemsize for x in jax.tree.leaves(tree)))


def structure_hash(tree: Mapping) -> str:
    """Identity of a tree's structure (paths, shapes, dtypes), not its values: tags exported patches."""
    h = hashlib.sha256()
    for p, leaf in sorted(flatten(tree).items()):
        h.update(f"{p}:{_describe(leaf)};".encode())
    return h.hexdigest()[:16]


def table(tree: Mapping, labels: Mapping, *, title: str = "", max_rows: int = 60) -> str:
    """A printable path | shape | params | label table (e.g. trainable/frozen), with totals per label."""
    flat, flat_labels = flatten(tree), flatten(labels)
    rows = [(p, "x".join(map(str, np.shape(v))) or "scalar", int(np.size(v)), str(flat_labels[p]))
            for p, v in flat.items()]
    width = max([len(r[0]) for r in rows] + [4])
    lines = [title] if title else []
    lines.append(f"{'path':<{width}}  {'shape':>14}  {'params':>9}  label")
    shown = rows if len(rows) <= max_rows else rows[: max_rows // 2] + [("...", "", 0, "")] + rows[-max_rows // 2:]
    for p, shape, n, lab in shown:
        lines.append(f"{p:<{width}}  {shape:>14}  {n:>9,}  {lab}" if p != "..." else f"... ({len(rows) - max_rows} more rows)")
    totals: dict[str, int] = {}
    for _, _, n, lab in rows:
        totals[lab] = totals.get(lab, 0) + n
    total = sum(totals.values())
    lines.append("totals: " + ", ".join(f"{lab} {n:,} ({100 * n / max(total, 1):.1f}%)" for lab, n in totals.items()))
    return "\n".join(lines)
