"""Model patches (Mudrakarta et al. 2018): a task is a small private subtree on a shared, frozen backbone.

A patch is named by parameter-tree rules: S/B = every BatchNorm scale and bias (plus the task's own BN
statistics), DW = every depthwise kernel, last layer = the head. A transfer mode is the list of patches
that train; everything else is frozen through `optim` lr multipliers of 0 and `stop_gradient`, so no
gradient is computed for it. Patches export to small files tagged with the backbone they fit.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import ml_collections
import numpy as np

from modular import checkpoint, data, losses, models, optim, params as P, supervised, train

SB = r".*/bn[^/]*/(scale|bias)"      # scale-and-bias patch
DW = r".*/dw_conv/kernel"            # depthwise patch (MobileNetV2)
LAST = r"head/.*"                    # last layer


@dataclasses.dataclass(frozen=True)
class TransferMode:
    """Which patches train; whether BN uses (and keeps) the task's own statistics; a fixed random head."""
    trains: tuple
    task_bn_stats: bool
    random_fixed_head: bool = False


MODES = {
    "last_layer": TransferMode((LAST,), task_bn_stats=False),
    "last_layer_bn_stats": TransferMode((LAST,), task_bn_stats=True),   # paper Appendix B.1
    "sb_last": TransferMode((SB, LAST), task_bn_stats=True),
    "sb_only": TransferMode((SB,), task_bn_stats=True, random_fixed_head=True),
    "dw_last": TransferMode((DW, LAST), task_bn_stats=True),
    "sb_dw_last": TransferMode((SB, DW, LAST), task_bn_stats=True),
    "full": TransferMode((".*",), task_bn_stats=True),
}
PAPER_MODES = ("last_layer", "sb_last", "sb_only", "dw_last", "sb_dw_last", "full")


def get_mode(name: str) -> TransferMode:
    if name not in MODES:
        raise ValueError(f"Unknown transfer mode {name!r}; known: {', '.join(MODES)}.")
    return MODES[name]


def lr_mults(mode: str) -> list:
    """The optax rule list of a mode: its patches train (x1), the catch-all freezes (x0)."""
    return [(rule, 1.0) for rule in get_mode(mode).trains] + [(".*", 0.0)]


def optim_config(base: ml_collections.ConfigDict, mode: str) -> ml_collections.ConfigDict:
    return optim.override(base, lr_mults=lr_mults(mode), default_mult=0.0)


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
                             f"has none (depthwise patches need mobilenet_v2).")


def split_private(variables: Mapping, mode: str, include_head: bool = True) -> tuple[dict, dict]:
    """(shared params, patch variables {'params': ..., ['batch_stats': ...]}) of a task's model."""
    parts = P.split(variables["params"], private_rules(mode, include_head), "shared")
    patch = {"params": parts.get("patch", {})}
    if get_mode(mode).task_bn_stats:
        patch["batch_stats"] = variables["batch_stats"]
    return parts.get("shared", {}), patch


def apply_patch(backbone_variables: Mapping, patch: Mapping) -> dict:
    """The task's variables: the backbone with the patch's leaves put in place (shapes checked)."""
    out = dict(backbone_variables)
    for collection, sub in patch.items():
        base = P.flatten(backbone_variables[collection])
        for path, leaf in P.flatten(sub).items():
            if path in base and np.shape(base[path]) != np.shape(leaf):
                raise P.SubtreeMismatchError(f"Patch leaf '{collection}/{path}' has shape {np.shape(leaf)} "
                                             f"but the backbone expects {np.shape(base[path])}.")
        out[collection] = P.merge(base, sub, allow_overlap=True)
    return out


def export_patch(path: str, variables: Mapping, mode: str, meta: Mapping | None = None) -> int:
    """Write a task's patch (+ head, + BN statistics) tagged with the shared backbone; returns bytes."""
    shared, patch = split_private(variables, mode)
    return checkpoint.export_subtree(path, patch, backbone=shared, meta={"mode": mode, **dict(meta or {})})


def import_patch(path: str, backbone_variables: Mapping, mode: str) -> dict:
    """Load a patch file onto a backbone; CheckpointError / SubtreeMismatchError if it does not fit."""
    shared, like = split_private(backbone_variables, mode)
    patch, _ = checkpoint.import_subtree(path, backbone=shared, like=None)
    if set(patch) != set(like):
        raise checkpoint.CheckpointError(f"Patch file {path} holds {sorted(patch)} but mode {mode!r} "
                                         f"needs {sorted(like)}: it does not fit.")
    return apply_patch(backbone_variables, patch)


@functools.lru_cache(maxsize=32)
def _eval_logits(model):
    # One function object per model, so jax reuses its compiled evaluation across modes and reloads.
    return lambda v, b: models.apply(model, v, b["image"], mode="eval")[0]


def accuracy(model, variables: Mapping, images: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy with BN in eval mode (the task's own statistics where the patch holds them)."""
    return train.accuracy(_eval_logits(model), variables, images, labels)


def patch_loss(model, mode: str):
    """Cross-entropy; BN in train mode (task statistics re-estimated) unless the mode keeps the source's."""
    bn_mode = "train" if get_mode(mode).task_bn_stats else "eval"

    def loss_fn(params, model_state, batch, rng):
        logits, _, new_state = models.apply(model, {"params": params, **model_state}, batch["image"], mode=bn_mode)
        loss = losses.cross_entropy(logits, batch["label"])
        return loss, (new_state, {"accuracy": losses.accuracy(logits, batch["label"])})
    return loss_fn


def target_start(source: supervised.Classifier, model_cfg, num_classes: int, image_shape: tuple, seed: int):
    """Source backbone with a fresh last layer for the target's classes."""
    model = models.build(model_cfg, num_classes)
    fresh = models.init(model, jax.random.key(seed + 1), (1,) + tuple(image_shape))
    params = dict(source.variables["params"], head=fresh["params"]["head"])
    stats = dict(source.variables["batch_stats"])
    if "head" in fresh.get("batch_stats", {}):
        stats["head"] = fresh["batch_stats"]["head"]
    return model, {"params": params, "batch_stats": stats}


def transfer(source: supervised.Classifier, ds: data.Dataset, mode: str, *, model_cfg, optim_cfg,
             num_steps: int, batch_size: int, seed: int = 0, workdir: str | None = None,
             log_every: int = 50, verbose: bool = True) -> tuple[supervised.Classifier, int]:
    """Train `mode`'s patch on ds from the source backbone; returns (classifier, trainable param count)."""
    model, variables = target_start(source, model_cfg, ds.num_classes, ds.image_shape, seed)
    check_applicable(variables["params"], mode)
    cfg = optim_config(optim_cfg, mode)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    tx = optim.build(cfg, params, num_steps)
    mask = optim.trainable_mask(params, cfg)
    if verbose:
        print(optim.trainable_table(params, cfg, title=f"[patch:{mode}] parameters"), flush=True)
    result = train.fit(
        state=train.TrainState.create(params, state, tx), loss_fn=patch_loss(model, mode), tx=tx,
        batch_fn=lambda step: data.batch_at(ds.train_images, ds.train_labels, step, batch_size, seed),
        num_steps=num_steps, seed=seed, trainable=mask, workdir=workdir, checkpoint_every=num_steps,
        log_every=log_every, name=f"patch:{mode}", verbose=verbose)
    final = jax.tree.map(np.asarray, jax.device_get({"params": result.state.params, **result.state.model_state}))
    trainable = optim.trainable_count(params, mask)
    return supervised.Classifier(model=model, variables=final, fit=result), trainable
