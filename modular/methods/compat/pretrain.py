"""Pretrained identical initial weights (the paper's pretrained-IIW settings, Sec. 4), at CPU scale: one
extractor is pretrained by *rotation prediction only* (the paper: "we create pre-trained models using
self-supervised rotation prediction only (i.e. ignoring class labels)", since STL-10 contains ImageNet
images) and starts both networks of a pair.

The paper pretrains on ILSVRC-12 at 32x32. Offline we have two digit datasets, both used by the study, so the
pretraining images are another *domain* of task a's training images (default `mnist5k/invert`, white-on-black
digits turned black-on-white); their labels are never read, and no test image is seen.
"""
from __future__ import annotations

import ml_collections

from modular import data, losses, rng, train
from modular.methods.compat.modules import build_modules, init_variables, run_module


def make_rotation_loss(mods):
    """loss_fn(params, stats, batch, rng): the rotation cross-entropy of network a's extractor through the RP
    head on all four rotations of every image in `batch['a']['image']`; the labels are not read."""
    def loss_fn(params, stats, batch, rng_):
        del rng_
        views, rot = data.rotation_views(batch["a"]["image"])
        ext = params["tasks"]["a"]["extractor"]
        feats, ext_s = run_module(mods.ext("a"), ext, stats["tasks"]["a"]["extractor"], views, "train")
        logits, rp_s = run_module(mods.rp_head, params["shared"]["rp"], stats["shared"]["rp"], feats, "train")
        loss = losses.cross_entropy(logits, rot)
        new = {"shared": dict(stats["shared"], rp=rp_s),
               "tasks": dict(stats["tasks"], a=dict(stats["tasks"]["a"], extractor=ext_s))}
        return loss, (new, {"rp": loss, "rp_acc": losses.accuracy(logits, rot)})
    return loss_fn


def pretrain_extractor(model_cfg: ml_collections.ConfigDict, ds, *, num_steps: int, batch_size: int,
                       optim_cfg: ml_collections.ConfigDict, seed: int, verbose: bool = False) -> tuple[dict, dict]:
    """(extractor params, extractor BatchNorm statistics) of an extractor trained `num_steps` steps by rotation
    prediction on `ds`'s training images (labels unused)."""
    if num_steps < 1:
        raise ValueError(f"compat.pretrain_steps must be a positive integer, got {num_steps}.")
    k = ds.num_classes
    mods = build_modules(model_cfg, k, k, k)
    params, stats = init_variables(mods, rng.key(seed, "pretrain"), ds.image_shape, identical_init=False)
    unlabeled = {"a": (ds.train_images, None)}
    trained = train.train_subtrees(
        params, stats, loss_fn=make_rotation_loss(mods), optim_cfg=optim_cfg,
        rules=[("tasks/a/extractor/.*", 1.0), ("shared/rp/.*", 1.0)], default_mult=0.0,
        batch_fn=lambda step: data.multitask_batch(unlabeled, step, batch_size, rng.seed(seed, "pretrain")),
        num_steps=int(num_steps), seed=seed, name=f"pretrain/{ds.name}", log_every=max(1, int(num_steps)),
        verbose=verbose)
    return trained.params["tasks"]["a"]["extractor"], trained.model_state["tasks"]["a"]["extractor"]
