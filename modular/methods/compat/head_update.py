"""Transferring a classifier across architectures (paper Sec. 5), as the paper runs it: a reference
network a and a network b of another architecture are trained on an old task (here the first
`old_classes` classes) so that b is compatible with a (b trained incrementally against a's frozen
auxiliary heads), or independently as the control. Then the task changes (here to all classes): a new
head is trained once, on the frozen reference extractor a, and put on extractor b with no training.
Its accuracy there is compared with the reference (the new head on a) and with the upper bound (a head
trained on b's own frozen extractor for as many steps).

Both extractors end in a 1x1-conv adapter to a common width so that one head architecture fits both;
the old task's recombination through the adapters (the measure this library had before) is reported too.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from modular import data, rng, train
from modular import params as P
from modular.data import Dataset
from modular.methods.compat.losses import make_loss_fn
from modular.methods.compat.modules import build_modules, init_variables
from modular.methods.compat.recombine import evaluate, task_accuracy
from modular.methods.compat.schedule import Pair, default_options, setting_name, train_pair

MODES = ("batch_stats", "eval")
PAPER_CLAIM = ("Sec. 5.2, Fig. 3: extractors of three architectures trained jointly with one DCC head on 5 "
               "classes; the head, extended to 10 classes and fine-tuned on the frozen reference extractor, works "
               "on the others at 91.7% (ResNet-56) and 91.6% (MobileNetV2) vs upper bounds 94.6% and 93.3%.")


def class_subset(ds: Dataset, classes: int) -> Dataset:
    """`ds` restricted to labels 0..classes-1 (both splits)."""
    if not 1 < classes < ds.num_classes:
        raise ValueError(f"compat.cross_arch_old_classes must be between 2 and {ds.num_classes - 1}, got {classes}.")
    kept = ds.subset(list(range(int(classes))), relabel=True)   # labels 0..classes-1 keep their ids
    return dataclasses.replace(kept, name=f"{ds.name}[:{classes}]")


def _with_heads(tree: dict, head) -> dict:
    """`tree` with both networks' task heads replaced by `head`."""
    return dict(tree, tasks={t: dict(tree["tasks"][t], head=head) for t in tree["tasks"]})


def _train_head(mods, params, stats, task: str, ds: Dataset, *, optim_cfg, num_steps: int, batch_size: int,
                seed: int) -> tuple[dict, dict]:
    """`task`'s head trained on `ds` over its frozen extractor (everything else frozen)."""
    t = train.train_subtrees(params, stats, loss_fn=make_loss_fn(mods, (task,)), optim_cfg=optim_cfg,
                             rules=[(f"tasks/{task}/head/.*", 1.0)], default_mult=0.0,
                             batch_fn=lambda step: data.multitask_batch({task: ds}, step, batch_size,
                                                                        rng.seed(seed, "new_head")),
                             num_steps=num_steps, seed=seed, name=f"new_head/{task}", log_every=num_steps,
                             verbose=False)
    return t.params, t.model_state


def update_heads(pair: Pair, ds: Dataset, *, model_cfg: ml_collections.ConfigDict, model_b_cfg, adapter_width: int,
                 optim_cfg, num_steps: int, batch_size: int, seed: int) -> dict:
    """The head update on a trained cross-architecture `pair`: {mode: {reference, transferred, own_b}} test
    accuracies over all of `ds`'s classes."""
    k = ds.num_classes
    new = build_modules(model_cfg, k, k, k, model_b_cfg=model_b_cfg, adapter_width=adapter_width)
    mods = dataclasses.replace(pair.modules, task_head_a=new.task_head_a, task_head_b=new.task_head_b)
    init_p, init_s = init_variables(new, rng.key(seed, "new_head"), ds.image_shape, identical_init=True)
    # One new head (another class count, so another shape), the same initial weights on both networks.
    params, stats = (_with_heads(tree, new_tree["tasks"]["a"]["head"])
                     for tree, new_tree in ((pair.params, init_p), (pair.stats, init_s)))
    kw = dict(optim_cfg=optim_cfg, num_steps=num_steps, batch_size=batch_size, seed=seed)
    p_ref, s_ref = _train_head(mods, params, stats, "a", ds, **kw)
    p_own, s_own = _train_head(mods, params, stats, "b", ds, **kw)
    p = P.replace_subtree(p_ref, "tasks/b/head", P.get_subtree(p_own, "tasks/b/head"))
    s = P.replace_subtree(s_ref, "tasks/b/head", P.get_subtree(s_own, "tasks/b/head"))

    def acc(ext, head, mode):
        return task_accuracy(mods, p, s, ext, head, ds.test_images, ds.test_labels, k, mode=mode)

    return {m: dict(reference=acc("a", "a", m), transferred=acc("b", "a", m), own_b=acc("b", "b", m))
            for m in MODES}


def run_head_update(ds: Dataset, *, settings: tuple[str, ...], options: ml_collections.ConfigDict,
                    model_cfg: ml_collections.ConfigDict, model_b_cfg: ml_collections.ConfigDict, adapter_width: int,
                    optim_cfg: ml_collections.ConfigDict, num_steps: int, head_steps: int, batch_size: int,
                    old_classes: int, seed: int) -> dict:
    """One seed: for each setting name, the pair trained incrementally on the old classes and the head update
    to all classes. {setting: {old_recombination, old_recombination_train_stats, <mode>/<metric>...}}."""
    from modular.methods.compat.schedule import parse_setting
    old = class_subset(ds, int(old_classes))
    opts = ml_collections.ConfigDict(dict(default_options().to_dict(), schedule="incremental", split=options.split,
                                          dcc_weight=float(options.dcc_weight), rp_weight=float(options.rp_weight),
                                          rp_fraction=float(options.rp_fraction)))
    model_cfg = ml_collections.ConfigDict(dict(model_cfg.to_dict(), split=options.split))
    out = {}
    for name in settings:
        setting = parse_setting(name)
        pair = train_pair(old, old, setting=setting, options=opts, model_cfg=model_cfg, optim_cfg=optim_cfg,
                          num_steps=num_steps, batch_size=batch_size, seed=seed, name=f"cross_arch/{name}",
                          log_every=max(1, num_steps), verbose=False, model_b_cfg=model_b_cfg,
                          adapter_width=adapter_width)
        rec = evaluate(pair, old, old)
        upd = update_heads(pair, ds, model_cfg=model_cfg, model_b_cfg=model_b_cfg, adapter_width=adapter_width,
                           optim_cfg=optim_cfg, num_steps=head_steps, batch_size=batch_size, seed=seed)
        row = dict(old_recombination=rec["recombination_accuracy"],
                   old_recombination_train_stats=rec["recombination_accuracy_train_stats"],
                   old_own=rec["own_accuracy"])
        for mode, tag in (("batch_stats", "bs"), ("eval", "stored")):
            row.update({f"{metric}_{tag}": float(v) for metric, v in upd[mode].items()})
        out[setting_name(*setting)] = row
    return out
