"""Pretrained identical initial weights (the paper's pretrained-IIW settings, where both networks start from
the same ImageNet-pretrained weights), at CPU scale: one supervised network is trained on a separate
pretraining task and its extractor starts both networks of a pair.

Offline we have two digit datasets, both used by the study, so the pretraining task is another *domain* of
task a's training images (default `mnist5k/invert`, white-on-black digits turned black-on-white) with their
labels: like ImageNet for CIFAR-10, it teaches related classes on different inputs; no test image is seen.
"""
from __future__ import annotations

import ml_collections

from modular import data, rng, train
from modular.methods.compat.losses import make_loss_fn
from modular.methods.compat.modules import build_modules, init_variables


def pretrain_extractor(model_cfg: ml_collections.ConfigDict, ds, *, num_steps: int, batch_size: int,
                       optim_cfg: ml_collections.ConfigDict, seed: int, verbose: bool = False) -> tuple[dict, dict]:
    """(extractor params, extractor BatchNorm statistics) of a network trained `num_steps` steps on `ds`."""
    if num_steps < 1:
        raise ValueError(f"compat.pretrain_steps must be a positive integer, got {num_steps}.")
    k = ds.num_classes
    mods = build_modules(model_cfg, k, k, k)
    params, stats = init_variables(mods, rng.key(seed, "pretrain"), ds.image_shape, identical_init=False)
    trained = train.train_subtrees(
        params, stats, loss_fn=make_loss_fn(mods, ("a",)), optim_cfg=optim_cfg, rules=[("tasks/a/.*", 1.0)],
        default_mult=0.0, batch_fn=lambda step: data.multitask_batch({"a": ds}, step, batch_size,
                                                                   rng.seed(seed, "pretrain")),
        num_steps=int(num_steps), seed=seed, name=f"pretrain/{ds.name}", log_every=max(1, int(num_steps)),
        verbose=verbose)
    return trained.params["tasks"]["a"]["extractor"], trained.model_state["tasks"]["a"]["extractor"]
