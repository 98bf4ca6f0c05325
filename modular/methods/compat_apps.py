"""Applications of compatible components (Gygli, Uijlings & Ferrari 2020, Sec. 5), built on the
`{'a','b','dcc','rp'}` parameter/statistics trees of `modular.methods.compat`.

- Unsupervised domain adaptation (`adapt_extractor_rp`): fine-tune one network's extractor on unlabeled
  target-domain images with the rotation-prediction loss through the *frozen* shared RP head. Because the
  RP head does not move, the adapted extractor stays compatible with the (frozen) task head trained on the
  source domain, which is then reused as is on the target domain.
- Faster transfer (`transfer_head`): put the compatible task head of one network on the extractor of the
  other and fine-tune on the head's task, against the same extractor with a re-initialised head; the
  accuracy is measured after 0 epochs (no training at all) and after every epoch.

Freezing is the library's one mechanism: optimizer rules with learning-rate multiplier 0 on everything but
the trainable prefixes (no update, no optimizer state, and `stop_gradient` in the train step).
"""
from __future__ import annotations

import functools
import re
from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from modular import losses, optim, train
from modular import data as D
from modular.methods import compat as C


def train_only(optim_cfg: ml_collections.ConfigDict, prefixes: Sequence[str]) -> ml_collections.ConfigDict:
    """`optim_cfg` with every parameter frozen (multiplier 0) except the subtrees under `prefixes`."""
    return optim.override(optim_cfg, lr_mults=[(f"{re.escape(p)}/.*", 1.0) for p in prefixes], default_mult=0.0)


def _copy(tree):
    return jax.tree.map(np.array, jax.device_get(tree))


# ----------------------------------------------------------------------------------------------------------
# Unsupervised domain adaptation through the frozen rotation head.

def make_rp_adaptation_loss(mods: C.CompatModules, task: str):
    """loss_fn(params, stats, batch, rng) for `train.fit`: RP cross-entropy of `task`'s extractor on the
    rotated unlabeled images `batch['image']`, through the shared RP head.

    The rotated pass normalises with its own batch statistics (as in `compat.make_loss_fn`) and the RP
    head's stored statistics are never touched; the extractor's running statistics are moved by a pass
    over the unrotated target images, so that stored-statistics evaluation sees the target domain.
    """
    def loss_fn(params, stats, batch, rng):
        del rng
        x = batch["image"]
        ext_p, ext_s = params[task]["extractor"], stats[task]["extractor"]
        _, new_ext_s = C.run_module(mods.ext(task), ext_p, ext_s, x, "train")
        views, rot = D.rotation_views(x)
        feats, _ = C.run_module(mods.ext(task), ext_p, ext_s, views, "batch_stats")
        logits, _ = C.run_module(mods.rp_head, params["rp"], stats["rp"], feats, "batch_stats")
        loss = losses.cross_entropy(logits, rot)
        new_stats = dict(stats)
        new_stats[task] = dict(stats[task], extractor=new_ext_s)
        return loss, (new_stats, {"rp_target": loss, "rp_acc_target": losses.accuracy(logits, rot)})

    return loss_fn


def rotation_accuracy(mods: C.CompatModules, params: Mapping, stats: Mapping, task: str, images: np.ndarray,
                      *, batch_size: int = 128) -> float:
    """How well `task`'s extractor + the shared RP head predict the rotation of `images` (batch statistics)."""
    correct, total = 0, 0
    for idx in C._even_chunks(len(images), batch_size):
        views, rot = D.rotation_views(images[idx])
        logits = C._recombined_forward(mods.ext(task), mods.rp_head, "batch_stats", params[task]["extractor"],
                                       stats[task]["extractor"], params["rp"], stats["rp"], views)
        correct += int(np.sum(np.argmax(np.asarray(logits), -1) == np.asarray(rot)))
        total += len(rot)
    return correct / total


@functools.partial(jax.jit, static_argnums=0)
def _moved_stats(extractor, ext_p, ext_s, x):
    return C.run_module(extractor, ext_p, ext_s, x, "train")[1]


def reestimate_extractor_stats(mods: C.CompatModules, params: Mapping, stats: Mapping, task: str,
                               images: np.ndarray, *, batch_size: int, num_batches: int, seed: int = 0) -> dict:
    """Control for `adapt_extractor_rp` (AdaBN-like): `stats` with `task`'s extractor running BatchNorm
    statistics moved over `num_batches` target batches exactly as adaptation moves them, but no weight changes."""
    batch_size = min(int(batch_size), len(images))
    no_labels = np.zeros((len(images),), np.int32)
    ext_s = stats[task]["extractor"]
    for step in range(int(num_batches)):
        x = D.batch_at(images, no_labels, step, batch_size, seed + 101)["image"]
        ext_s = _moved_stats(mods.ext(task), params[task]["extractor"], ext_s, x)
    new = dict(stats)
    new[task] = dict(stats[task], extractor=_copy(ext_s))
    return new


def adapt_extractor_rp(mods: C.CompatModules, params: Mapping, stats: Mapping, task: str, images: np.ndarray, *,
                       optim_cfg: ml_collections.ConfigDict, num_steps: int, batch_size: int, seed: int = 0,
                       workdir: str | None = None, log_every: int = 50, verbose: bool = True,
                       name: str = "uda") -> tuple[dict, dict, dict]:
    """Fine-tune `params[task]['extractor']` on unlabeled `images` with the frozen RP head; everything else
    (task heads, DCC, RP head, the other network) is frozen. Returns (params, stats, info)."""
    if "rp" not in params:
        raise ValueError("Domain adaptation through rotation prediction needs a trained RP head (compat.rp=True).")
    if num_steps < 1:
        raise ValueError(f"compat.uda_steps must be a positive integer, got {num_steps}.")
    batch_size = min(int(batch_size), len(images))
    ocfg = train_only(optim_cfg, [f"{task}/extractor"])
    tx = optim.build(ocfg, params, num_steps)
    state = train.TrainState.create(params, stats, tx)
    no_labels = np.zeros((len(images),), np.int32)  # batching needs a label array; the loss never reads it

    def batch_fn(step):
        return {"image": D.batch_at(images, no_labels, step, batch_size, seed + 101)["image"]}

    fit = train.fit(state=state, loss_fn=make_rp_adaptation_loss(mods, task), tx=tx, batch_fn=batch_fn,
                    num_steps=num_steps, seed=seed, trainable=optim.trainable_mask(params, ocfg), workdir=workdir,
                    checkpoint_every=0, log_every=log_every, name=name, verbose=verbose)
    info = dict(history=fit.history, train_seconds=fit.seconds, optimizer_state_size=optim.state_size(fit.state.opt_state))
    return _copy(fit.state.params), _copy(fit.state.model_state), info


def task_accuracy(mods: C.CompatModules, params: Mapping, stats: Mapping, extractor_of: str, head_of: str,
                  images: np.ndarray, labels: np.ndarray, num_classes: int, *, mode: str) -> float:
    """Accuracy of extractor `extractor_of` + task head `head_of` over all `num_classes` labels."""
    return C.recombination_accuracy(mods, params, stats, extractor_of, head_of, images, labels,
                                    list(range(num_classes)), mode=mode)


# ----------------------------------------------------------------------------------------------------------
# Faster transfer: a compatible head on another network's extractor.

def transplant(params: Mapping, stats: Mapping, *, extractor_of: str, into: str, head_params=None,
               head_stats=None) -> tuple[dict, dict]:
    """Trees where network `into` has the extractor of `extractor_of` and its own head (or the given one)."""
    p, s = dict(params), dict(stats)
    p[into] = {"extractor": params[extractor_of]["extractor"],
               "head": params[into]["head"] if head_params is None else head_params}
    s[into] = {"extractor": stats[extractor_of]["extractor"],
               "head": stats[into]["head"] if head_stats is None else head_stats}
    return p, s


def fresh_head(mods: C.CompatModules, task: str, image_shape: tuple, seed: int) -> tuple[dict, dict]:
    """A re-initialised task head for `task` (params, stats), drawn independently of the trained ones."""
    p, s = C.init_variables(mods, jax.random.key(seed), image_shape, identical_init=False)
    return p[task]["head"], s[task]["head"]


def transfer_head(mods: C.CompatModules, params: Mapping, stats: Mapping, ds, *, extractor_of: str, head_of: str,
                  optim_cfg: ml_collections.ConfigDict, epochs: int, batch_size: int, train_part: str = "head",
                  head_params=None, head_stats=None, seed: int = 0, workdir: str | None = None,
                  verbose: bool = True, name: str = "transfer") -> dict:
    """Fine-tune extractor `extractor_of` + head of `head_of` (or `head_params`) on `ds` (head_of's task).

    Returns accuracies on ds's test set after 0, 1, ..., `epochs` epochs, in both BatchNorm modes; the
    0-epoch numbers are computed on the untouched transplanted weights, before any optimizer step.
    train_part: 'head' (the extractor stays frozen) or 'all'.
    """
    if mods.extractor_b is not None:
        raise ValueError("Head transfer between networks needs one extractor architecture (compat model_b unset).")
    if train_part not in ("head", "all"):
        raise ValueError(f"compat.transfer_train must be 'head' or 'all', got {train_part!r}.")
    if epochs < 0:
        raise ValueError(f"compat.transfer_epochs must be >= 0, got {epochs}.")
    p0, s0 = transplant(params, stats, extractor_of=extractor_of, into=head_of, head_params=head_params,
                        head_stats=head_stats)
    k = ds.num_classes

    def accs(p, s):
        return {m: task_accuracy(mods, p, s, head_of, head_of, ds.test_images, ds.test_labels, k, mode=m)
                for m in ("batch_stats", "eval")}

    curve = [dict(epoch=0, step=0, **accs(p0, s0))]
    out = dict(curve=curve, steps_per_epoch=0, train_seconds=0.0)
    if epochs == 0:
        return out
    batch_size = min(int(batch_size), len(ds.train_images))
    steps_per_epoch = len(ds.train_images) // batch_size  # batch_at drops each epoch's remainder
    num_steps = epochs * steps_per_epoch
    ocfg = train_only(optim_cfg, [f"{head_of}/head"] if train_part == "head" else [head_of])
    tx = optim.build(ocfg, p0, num_steps)
    state = train.TrainState.create(p0, s0, tx)
    no_aux = ml_collections.ConfigDict(dict(dcc=False, rp=False))
    loss_fn = C.make_loss_fn(mods, no_aux, C.common_label_map(range(k), k), (head_of,))

    def batch_fn(step):
        b = D.batch_at(ds.train_images, ds.train_labels, step, batch_size, seed + 202)
        return {f"image_{head_of}": b["image"], f"label_{head_of}": b["label"]}

    def eval_fn(st):
        step = int(jax.device_get(st.step))
        curve.append(dict(epoch=step // steps_per_epoch, step=step,
                          **accs(jax.device_get(st.params), jax.device_get(st.model_state))))
        return {f"acc_{m}": curve[-1][m] for m in ("batch_stats", "eval")}

    fit = train.fit(state=state, loss_fn=loss_fn, tx=tx, batch_fn=batch_fn, num_steps=num_steps, seed=seed,
                    trainable=optim.trainable_mask(p0, ocfg), workdir=workdir, checkpoint_every=0,
                    log_every=steps_per_epoch, eval_fn=eval_fn, eval_every=steps_per_epoch, name=name,
                    verbose=verbose)
    out.update(steps_per_epoch=steps_per_epoch, train_seconds=fit.seconds)
    return out
