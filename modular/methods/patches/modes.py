"""Transfer modes: which parameters form a patch, and patch files that rebuild a task on its backbone.

A patch is named by parameter-tree rules: S/B = every BatchNorm scale and bias (plus the task's own BN
statistics), DW = every depthwise kernel, last layer = the head. A transfer mode is the list of patches
that train; the same rules freeze everything else and split a task's model into shared and private parts.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from modular import checkpoint, params as P

SB = r".*/bn[^/]*/(scale|bias)"      # scale-and-bias patch
DW = r".*/dw_conv/kernel"            # depthwise patch (MobileNetV2)
LAST = r"head/.*"                    # last layer
MIXTURE = r".*/mixture"              # template-mixture weights (isometric model with templates)


@dataclasses.dataclass(frozen=True)
class TransferMode:
    """Which patches train; whether BN uses (and keeps) the task's own statistics; a fixed random head."""
    trains: tuple
    task_bn_stats: bool
    random_fixed_head: bool = False


MODES = {
    "last_layer": TransferMode((LAST,), task_bn_stats=False),
    "last_layer_bn_stats": TransferMode((LAST,), task_bn_stats=True),   # Appendix B.1: worse on most datasets
    "sb_last": TransferMode((SB, LAST), task_bn_stats=True),
    "sb_only": TransferMode((SB,), task_bn_stats=True, random_fixed_head=True),
    "dw_last": TransferMode((DW, LAST), task_bn_stats=True),            # re-estimates every BN statistic too
    "dw_last_frozen_stats": TransferMode((DW, LAST), task_bn_stats=False),   # the source's statistics, frozen
    "sb_dw_last": TransferMode((SB, DW, LAST), task_bn_stats=True),
    "full": TransferMode((".*",), task_bn_stats=True),
    # Template mixtures' task-private part on a registered isometric backbone (models.build 'isometric'):
    # the per-layer mixture weights over the frozen templates, with an S/B patch and the head.
    "mixture": TransferMode((MIXTURE, SB, LAST), task_bn_stats=True),
}
PAPER_MODES = ("last_layer", "sb_last", "sb_only", "dw_last", "sb_dw_last", "full")


def stored_count(variables: Mapping, mode: str) -> int:
    """Values a task stores for `mode`: its patch and head, plus the BN statistics when it re-estimates them
    (they are part of the task as much as the trained scales and biases)."""
    return P.count(split_private(variables, mode)[1])


def get_mode(name: str) -> TransferMode:
    if name not in MODES:
        raise ValueError(f"Unknown transfer mode {name!r}; known: {', '.join(MODES)}.")
    return MODES[name]


def lr_rules(mode: str) -> list:
    """The learning-rate rules of a mode: its patches train (x1), the catch-all freezes (x0)."""
    return [(rule, 1.0) for rule in get_mode(mode).trains] + [(".*", 0.0)]


def private_rules(mode: str, include_head: bool = True) -> list:
    """Rules labelling a mode's task-private parameters 'patch' (what it trains, plus the head it uses).

    include_head=False keeps the head shared (multi-resolution: one last layer, a patch per resolution)."""
    rules = get_mode(mode).trains + ((LAST,) if include_head else ())
    return [(rule, "patch") for rule in rules if include_head or rule != LAST]


def check_applicable(params: Mapping, mode: str) -> None:
    """A mode whose patch matches nothing (e.g. DW on a ResNet) would silently equal another mode."""
    for rule in get_mode(mode).trains:
        if not any(P.match_rules(p, [(rule, True)], False) for p in P.paths(params)):
            raise ValueError(f"Transfer mode {mode!r} needs parameters matching {rule!r}, but this model "
                             f"has none (depthwise patches need mobilenet_v2, mixture patches an isometric "
                             f"model with templates).")


def split_private(variables: Mapping, mode: str, include_head: bool = True) -> tuple[dict, dict]:
    """(shared params, patch variables {'params': ..., ['batch_stats': ...]}) of a task's model."""
    parts = P.split(variables["params"], private_rules(mode, include_head), "shared")
    patch = {"params": parts.get("patch", {})}
    if get_mode(mode).task_bn_stats:
        patch["batch_stats"] = variables["batch_stats"]
    return parts.get("shared", {}), patch


def apply_patch(backbone_variables: Mapping, patch: Mapping) -> dict:
    """The task's variables: the backbone with the patch's leaves put in place (shapes checked)."""
    unused = P.matching_report(backbone_variables, patch)["unused"]
    if unused:
        raise P.SubtreeMismatchError(f"Patch leaf '{unused[0]}' has no place in the backbone.")
    return P.load_matching(backbone_variables, patch)


def export_patch(path: str, variables: Mapping, mode: str, meta: Mapping | None = None) -> int:
    """Write a task's patch (+ head, + BN statistics) tagged with the shared backbone; returns bytes."""
    shared, patch = split_private(variables, mode)
    return checkpoint.export_subtree(path, patch, backbone=shared, meta={"mode": mode, **dict(meta or {})})


def import_patch(path: str, backbone_variables: Mapping, mode: str, *, allow_other_weights: bool = False) -> dict:
    """Load a patch file onto a backbone; CheckpointError / SubtreeMismatchError if it does not fit."""
    shared, like = split_private(backbone_variables, mode)
    patch, _ = checkpoint.import_subtree(path, backbone=shared, like=None, allow_other_weights=allow_other_weights)
    if set(patch) != set(like):
        raise checkpoint.CheckpointError(f"Patch file {path} holds {sorted(patch)} but mode {mode!r} "
                                         f"needs {sorted(like)}: it does not fit.")
    return apply_patch(backbone_variables, patch)
