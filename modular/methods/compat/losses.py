"""The training objectives: task cross-entropy plus the two compatibility losses (DCC, RP), and the
rotation loss that adapts an extractor to unlabeled images through the frozen RP head.

The factories are memoised, so equal arguments give the same loss function object and
`train.train_subtrees` reuses its compiled step.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modular import losses
from modular.data import rotation_views
from modular.methods.compat import pretext
from modular.methods.compat.modules import CompatModules, run_module


def common_label_map(common: Sequence[int], num_classes: int) -> np.ndarray:
    """Task label -> DCC class index (position in `common`), or -1 for classes outside it."""
    table = np.full((num_classes,), -1, np.int32)
    for i, c in enumerate(common):
        table[int(c)] = i
    return table


def resolve_common_classes(common: Sequence[int] | None, num_a: int, num_b: int) -> list[int]:
    """The shared label ids: given explicitly, or every label id both tasks have."""
    if common is None:
        return list(range(min(num_a, num_b)))
    common = [int(c) for c in common]
    if not common or len(set(common)) != len(common) or any(not 0 <= c < min(num_a, num_b) for c in common):
        raise ValueError(f"compat.common_classes {common} must be distinct labels present in both tasks "
                         f"(0..{min(num_a, num_b) - 1}).")
    return common


@functools.lru_cache(maxsize=64)
def make_loss_fn(mods: CompatModules, tasks: tuple[str, ...], *, dcc: bool = False, rp: bool = False,
                 common: tuple[int, ...] = (), num_classes: int = 0, dcc_weight: float = 1.0,
                 rp_weight: float = 1.0, rp_fraction: float = 1.0):
    """loss_fn(params, stats, batch, rng) over the pair trees; `batch[t]` holds 'image'/'label' per task t.

    Each task adds its head's cross-entropy, DCC's cross-entropy on its examples of the `common` classes
    (labels 0..num_classes-1) and the RP cross-entropy on (the first `rp_fraction` of) its batch, each image
    rotated by a quarter-turn count drawn from `rng` (without an rng: image i turns i % 4 times). The
    rotated pass normalises with its own batch statistics but does not move the running ones, which stay
    those of real images.
    """
    label_map = jnp.asarray(common_label_map(common, num_classes)) if dcc else None

    def loss_fn(params, stats, batch, rng):
        shared, nets = params["shared"], params["tasks"]
        new_shared, new_nets = dict(stats["shared"]), dict(stats["tasks"])
        total, metrics = 0.0, {}
        for t in tasks:
            x, y = batch[t]["image"], batch[t]["label"]
            ext_stats = stats["tasks"][t]["extractor"]
            feats, new_ext = run_module(mods.ext(t), nets[t]["extractor"], ext_stats, x, "train")
            logits, new_head = run_module(mods.head(t), nets[t]["head"], stats["tasks"][t]["head"], feats, "train")
            new_nets[t] = {"extractor": new_ext, "head": new_head}
            task_loss = losses.cross_entropy(logits, y)
            total = total + task_loss
            metrics[f"loss_{t}"] = task_loss
            metrics[f"acc_{t}"] = losses.accuracy(logits, y)
            if dcc:
                # A one-hot lookup, not a gather: gathers from a constant break on data-sharded labels.
                target = jnp.sum(jnp.where(y[:, None] == jnp.arange(label_map.shape[0]), label_map, 0), -1)
                dcc_logits, new_shared["dcc"] = run_module(mods.dcc_head, shared["dcc"], new_shared["dcc"], feats,
                                                           "train")
                dcc_loss = losses.cross_entropy(dcc_logits, jnp.maximum(target, 0), target >= 0)
                total = total + dcc_weight * dcc_loss
                metrics[f"dcc_{t}"] = dcc_loss
            if rp:
                n = max(1, int(round(x.shape[0] * rp_fraction)))
                rot = (jnp.arange(n, dtype=jnp.int32) % 4 if rng is None else
                       jax.random.randint(jax.random.fold_in(rng, ord(t)), (n,), 0, 4, jnp.int32))
                views = pretext.apply(x[:n], rot, "rot4")
                r_feats, _ = run_module(mods.ext(t), nets[t]["extractor"], ext_stats, views, "batch_stats")
                rp_logits, new_shared["rp"] = run_module(mods.rp_head, shared["rp"], new_shared["rp"], r_feats, "train")
                rp_loss = losses.cross_entropy(rp_logits, rot)
                total = total + rp_weight * rp_loss
                metrics[f"rp_{t}"] = rp_loss
        return total, ({"shared": new_shared, "tasks": new_nets}, metrics)

    return loss_fn


@functools.lru_cache(maxsize=8)
def make_rp_adaptation_loss(mods: CompatModules, task: str):
    """loss_fn(params, stats, batch, rng): RP cross-entropy of `task`'s extractor on rotated copies of the
    unlabeled images `batch[task]['image']`, through the shared RP head.

    The rotated pass normalises with its own batch statistics (as in `make_loss_fn`) and the RP head's
    stored statistics are never touched; the extractor's running statistics are moved by a pass over the
    unrotated target images, so that stored-statistics evaluation sees the target domain.
    """
    def loss_fn(params, stats, batch, rng):
        del rng
        x = batch[task]["image"]
        ext_p, ext_s = params["tasks"][task]["extractor"], stats["tasks"][task]["extractor"]
        _, new_ext_s = run_module(mods.ext(task), ext_p, ext_s, x, "train")
        views, rot = rotation_views(x)
        feats, _ = run_module(mods.ext(task), ext_p, ext_s, views, "batch_stats")
        logits, _ = run_module(mods.rp_head, params["shared"]["rp"], stats["shared"]["rp"], feats, "batch_stats")
        loss = losses.cross_entropy(logits, rot)
        nets = dict(stats["tasks"], **{task: dict(stats["tasks"][task], extractor=new_ext_s)})
        return loss, ({"shared": stats["shared"], "tasks": nets},
                      {"rp_target": loss, "rp_acc_target": losses.accuracy(logits, rot)})

    return loss_fn
